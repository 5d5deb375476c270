from cifar_keras.cli.app import main

raise SystemExit(main())
