"""Training: one loop for every model, the tasks it runs, events and checkpoints."""

from core.train.events import CancelToken, Event, EventBus
from core.train.loop import FitResult, fit, make_optimizer
from core.train.tasks import ClassificationTask, Task, predict_logits

__all__ = ["CancelToken", "ClassificationTask", "Event", "EventBus", "FitResult", "Task",
           "fit", "make_optimizer", "predict_logits"]
