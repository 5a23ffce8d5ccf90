"""The GPU zoo pipeline: train several zoo models at once on one lent GPU, within the lease's limits, and bring
their state back after every call. ``lyadeq-gpu-zoo`` (``tools/gpu_zoo.py``) is its command line; docs/gpu.md
gives the exact device calls.

On this machine, ``plan`` cuts the data (and any collected state to resume) into batches that each fit in one
call beside the working tree. On the device, every call runs ``cycle``: ``stage`` the carried batch into a work
folder that outlives the calls, ``restore`` carried state, start every unfinished run as a detached
``lyadeq-train`` job (several at once on the one GPU, checkpointing often), evaluate each run that finishes
with ``lyadeq-eval``, ``collect`` the runs' newest checkpoints and metrics into ``$OUT`` within its file limits,
and print a table. A call that hits its time limit still returns the last collect.

=============== ===========================================================================================
module          job
=============== ===========================================================================================
``limits``      the device's transfer limits; sizes like ``60MiB``
``carry``       the plan: files cut into batches under a size limit, ``plan.json``
``staging``     batches into the work folder, pieces back into verified files, what is missing
``workdir``     the device-side work folder's layout
``jobs``        detached (``setsid``) jobs: launch, state, stop, logs
``runs``        a run folder's progress (epochs, accuracy, s/epoch, finished) and the table
``collect``     runs packed into ``$OUT`` within its limits; restore of collected state
``schedule``    one call's work: :func:`cycle`
=============== ===========================================================================================
"""

from .carry import CarryItem, data_items, state_items, tree_bytes, write_carry
from .collect import collect, restore
from .limits import OutLimits, parse_size
from .runs import RunProgress, format_table, run_progress
from .schedule import ZooOptions, cycle
from .staging import StageReport, stage
from .workdir import WorkDir, default_work

__all__ = [
    "CarryItem",
    "OutLimits",
    "RunProgress",
    "StageReport",
    "WorkDir",
    "ZooOptions",
    "collect",
    "cycle",
    "data_items",
    "default_work",
    "format_table",
    "parse_size",
    "restore",
    "run_progress",
    "stage",
    "state_items",
    "tree_bytes",
    "write_carry",
]
