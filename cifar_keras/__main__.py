from cifar_keras.cli import main

raise SystemExit(main())
