"""Named augmentation views: the grid, its images, and the loop showing a task its views."""

from __future__ import annotations

import torch

from core.config import TrainConfig
from core.data import ViewGrid, random_shift, shift_pad
from core.data.augment import shift
from core.distill.task import DistillationTask, LiveDistillationTask
from core.models import ModelSpec, build_model
from core.train import fit
from core.train.tasks import ClassificationTask


def test_grid_of_every_offset_is_the_training_augmentation():
    grid = ViewGrid.for_data(16, flip=True)
    pad = shift_pad(16)
    assert grid.pad == pad == 2 and grid.offsets == [0, 1, 2, 3, 4]
    assert grid.num_views == 50 and len(set(map(tuple, grid.table.tolist()))) == 50
    # random_shift draws its crop corner uniformly from the same offsets.
    x = torch.arange(16.0).repeat(16, 1)[None, None].expand(400, 1, 16, 16).contiguous()
    corners = set(random_shift(x, pad, torch.Generator().manual_seed(0))[:, 0, 0, 2].tolist())
    assert corners == {0.0, 1.0, 2.0, 3.0, 4.0}


def test_strided_grid_keeps_the_centre():
    assert ViewGrid(pad=4, flip=False, stride=3).offsets == [1, 4, 7]
    assert ViewGrid(pad=4, flip=False, stride=4).offsets == [0, 4, 8]
    assert ViewGrid.for_data(32, flip=False, augment=False).num_views == 1


def test_each_view_is_its_shift_and_flip():
    grid = ViewGrid.for_data(16, flip=True)
    x = torch.randn(5, 3, 16, 16)
    assert torch.equal(grid.apply_all(x, grid.identity), x)
    for v in (0, 7, grid.num_views - 1):
        r, c, f = grid.table[v].tolist()
        expected = shift(x, grid.pad, torch.tensor([[r] * 5, [c] * 5]))
        expected = expected.flip(3) if f else expected
        assert torch.equal(grid.apply_all(x, v), expected), v


class _Recorder(ClassificationTask):
    """Keeps what the loop hands the task, to check it against the grid."""

    def __init__(self, views):
        super().__init__(views=views)
        self.seen = []

    def __call__(self, model, x, y, idx):
        self.seen.append((x.detach().clone(), idx.clone()))
        return super().__call__(model, x, y, idx)


def test_the_loop_names_the_view_of_every_example(shapes_bundle):
    grid = ViewGrid.for_data(shapes_bundle.image_size, flip=True)
    task = _Recorder(grid)
    model = build_model(ModelSpec("test_resnet"), shapes_bundle.num_classes, shapes_bundle.in_chans)
    fit(model, task, shapes_bundle, TrainConfig(epochs=1, batch_size=64), seed=3)
    n = len(shapes_bundle.train)
    all_idx = torch.cat([idx for _, idx in task.seen])
    assert all_idx.max() < grid.num_views * n and len(set((all_idx // n).tolist())) > 10
    x, idx = task.seen[0]
    plain = shapes_bundle.normalize(shapes_bundle.train.x[idx % n])
    shown = grid.apply(plain, idx // n)
    assert torch.allclose(x, shown.contiguous(memory_format=torch.channels_last), atol=1e-6)


def test_view_targets_and_residual_weights_are_looked_up_by_view_and_row():
    n, k = 4, 3
    target = torch.arange(2 * n * k, dtype=torch.float32).reshape(2 * n, k).softmax(-1)  # 2 views
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    task = DistillationTask(target, 2.0, 0.5, weights=weights, views=ViewGrid(pad=0, flip=True))
    model = torch.nn.Flatten()
    seen = {}
    import core.distill.task as task_mod
    original = task_mod.kd_loss
    task_mod.kd_loss = lambda name, s, t, y, T, a, weights=None: seen.update(t=t, w=weights) or {"loss": s.sum()}
    try:
        task(model, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.tensor([1, n + 3]))
    finally:
        task_mod.kd_loss = original
    assert torch.equal(seen["t"], target[[1, n + 3]])
    assert torch.equal(seen["w"], torch.tensor([2.0, 4.0]))


def test_live_target_is_the_rule_applied_to_the_teachers():
    torch.manual_seed(0)
    teachers = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)) for _ in range(2)]
    rule = lambda z: z.log_softmax(-1).mean(0).softmax(-1)  # noqa: E731 - mean_logit
    task = LiveDistillationTask(teachers, rule, 4.0, 0.9)
    x = torch.randn(5, 3, 2, 2)
    expected = rule(torch.stack([t(x) for t in teachers]))
    assert torch.allclose(task.target(x), expected, atol=1e-6)
    assert task.target(x).requires_grad is False
