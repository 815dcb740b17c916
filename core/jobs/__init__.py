"""Background experiments: a bounded FIFO queue, one worker per device, cancel and resume."""

from core.jobs.export_job import ExportJob
from core.jobs.job import Job, QueuedJob, SweepJob
from core.jobs.manager import DEFAULT_MAX_QUEUED, JobError, JobManager, QueueFull, device_key, shared_manager

__all__ = ["DEFAULT_MAX_QUEUED", "ExportJob", "Job", "JobError", "JobManager", "QueueFull", "QueuedJob", "SweepJob", "device_key",
           "shared_manager"]
