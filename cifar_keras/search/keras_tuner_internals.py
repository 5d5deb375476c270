"""What a distributed search needs of KerasTuner that it has no public API for: its chief's gRPC service, the
chief's test for the search's end, and its workers' gRPC timeout. They live in keras_tuner.src (KerasTuner 1.4,
the range pyproject.toml pins); this module alone imports them. Imported when a distributed search starts: it
imports gRPC."""

import contextlib

from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief, oracle_client

OracleServicer = oracle_chief.OracleServicer  # the chief's gRPC service; stop_triggered once a worker was told to stop
exit_chief = oracle_chief.exit_chief  # exit_chief(oracle): no trial running and no worker waiting


def create_trial_response(trial):
    """The answer of the service's CreateTrial for `trial`."""
    return protos.get_service().CreateTrialResponse(trial=trial.to_proto())


def add_servicer(servicer, server):
    """Serve `servicer` (an OracleServicer) on `server` (a grpc.Server)."""
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)


@contextlib.contextmanager
def client_timeout(seconds):
    """A worker's gRPC calls to the chief give up after `seconds` (KerasTuner's: an hour) while the block runs."""
    saved, oracle_client.TIMEOUT = oracle_client.TIMEOUT, seconds  # read at every call
    try:
        yield
    finally:
        oracle_client.TIMEOUT = saved
