"""imet.registry: the experiment log across kernels and sessions (JSON lines), its merge, table and
comparison plot."""
from imet.registry.records import (KINDS, TrainRecorder, append_record, make_record,
                                   record_train_subscriber)
from imet.registry.store import (REGISTRY_NAME, find_registries, merge_into, merge_records,
                                 read_registry, write_registry)

__all__ = ["KINDS", "REGISTRY_NAME", "TrainRecorder", "append_record", "find_registries",
           "make_record", "merge_into", "merge_records", "read_registry",
           "record_train_subscriber", "write_registry"]
