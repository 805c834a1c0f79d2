"""Feature imitation for distillation: channel-wise distillation of the features the head reads.

Channel-wise distillation (CWD), Shu et al. 2021, "Channel-wise Knowledge Distillation for Dense
Prediction", arXiv:2011.13256: each channel of a feature map becomes a distribution over the map's
locations (softmax of value / τ), and the student's is pulled to the teacher's by
``τ² · KL(teacher ‖ student)``, averaged over the channels and the images. It tells the student *where*
each of the teacher's channels responds, which is denser than the head's outputs, most of which are
background.

The features are the inputs of the model's prediction convs that run in its forward pass
(``model.head_convs``; YOLOv8's fixed DFL conv does not run there, the decoder takes the expectation
itself; an input read by several convs counts once): for YOLOv5 and the YOLOv3 family the neck's output
at each level, for YOLOX and YOLOv8 / YOLO11 the last features of each branch of the decoupled head. A
pruned student has fewer channels there than its teacher: a 1×1 conv per feature (an adapter, trained
with the student, never part of the model file) maps the student's channels onto the teacher's. Under DDP
each process trains its own adapters: they only shape the loss, and the student's gradients are averaged
over the processes as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yoloslim.models.io import unwrap

CWD_TAU = 1.0  # CWD's temperature for detection (arXiv:2011.13256 uses τ = 1 for its detectors)


def head_feature_convs(model: nn.Module, probe_size: int) -> list[int]:
    """Positions in ``model.head_convs`` of the convs whose inputs are the features to imitate.

    A conv the forward pass does not call is left out, and of several convs that read the same tensor only
    the first is kept. Found with one forward pass of a blank ``probe_size`` image in eval mode.
    """
    net = unwrap(model)
    convs = list(net.head_convs)
    seen: list[tuple[int, torch.Tensor]] = []

    def hook(j: int):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            seen.append((j, inputs[0]))
        return record

    handles = [c.register_forward_pre_hook(hook(j)) for j, c in enumerate(convs)]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            param = next(net.parameters())
            net(torch.zeros((1, 3, probe_size, probe_size), dtype=param.dtype, device=param.device))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    keep: list[int] = []
    for j, x in seen:
        if not any(x is y for k, y in seen if k in keep):
            keep.append(j)
    return sorted(keep)


class FeatureTap:
    """The latest input of each chosen head conv of ``model``, recorded by forward pre-hooks.

    Args:
        model: the student or the teacher (the bare model: a deep copy such as the EMA carries the hooks
            along, and is ignored).
        positions: which of ``model.head_convs`` (:func:`head_feature_convs`).
    """

    def __init__(self, model: nn.Module, positions: list[int]) -> None:
        convs = list(unwrap(model).head_convs)
        self.convs = [convs[j] for j in positions]
        self._latest: dict[int, torch.Tensor] = {}
        self._handles = [c.register_forward_pre_hook(self._hook) for c in self.convs]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        for k, c in enumerate(self.convs):
            if c is module:
                self._latest[k] = inputs[0]

    def features(self) -> list[torch.Tensor]:
        """The inputs of the last forward pass, in the order of ``positions``."""
        if len(self._latest) != len(self.convs):
            raise RuntimeError("FeatureTap: the model has not run since the tap was set")
        return [self._latest[k] for k in range(len(self.convs))]

    def clear(self) -> None:
        """Forget the recorded inputs (a deep copy of the model, e.g. a checkpoint's, then copies no graph)."""
        self._latest.clear()

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self.clear()


def channel_wise_divergence(student: torch.Tensor, teacher: torch.Tensor, tau: float = CWD_TAU) -> torch.Tensor:
    """``τ² · KL(softmax(t/τ) ‖ softmax(s/τ))`` over the locations of each channel, mean over images and channels.

    Args:
        student, teacher: (b, c, h, w) maps with the same shape.
    """
    b, c = teacher.shape[:2]
    t_log = F.log_softmax(teacher.float().reshape(b, c, -1) / tau, -1)  # (b, c, h·w)
    s_log = F.log_softmax(student.float().reshape(b, c, -1) / tau, -1)
    return tau**2 * (t_log.exp() * (t_log - s_log)).sum(-1).mean()


class FeatureImitation(nn.Module):
    """The adapters (1×1 convs, student channels → teacher channels) and the CWD loss over the features.

    Args:
        student_channels, teacher_channels: channels of each imitated feature.
        tau: CWD's temperature.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int], tau: float = CWD_TAU) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"the student has {len(student_channels)} head features, the teacher "
                             f"{len(teacher_channels)}")
        self.adapters = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels,
                                                                          strict=True))
        self.tau = tau

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        """The mean over the features of the CWD between the adapted student features and the teacher's."""
        terms = [channel_wise_divergence(a(s.float()), t.detach(), self.tau)
                 for a, s, t in zip(self.adapters, student, teacher, strict=True)]
        return torch.stack(terms).mean()
