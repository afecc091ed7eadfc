"""What a model says about itself (:class:`ModelSpec`) and the interface of the networks.

:class:`CloudRemovalNet` is the base of the three networks: ``forward(cloudy, sar)`` on
normalised tensors, the input checks, and the spec that decloud reads.
"""

from __future__ import annotations

import inspect
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from ..exceptions import ModelConfigError
from ..schema import BANDS, POLARIZATIONS

#: what a network does (:attr:`ModelSpec.task`)
TASKS: tuple[str, ...] = ("cloud_removal", "landcover")

__all__ = [
    "OPTICAL_BANDS",
    "SAR_POLARIZATIONS",
    "TASKS",
    "CloudRemovalNet",
    "ModelSpec",
    "check_size",
    "check_task",
]

#: the data model's names (:mod:`m3rcr_xr.schema`), in the networks' channel order
OPTICAL_BANDS: tuple[str, ...] = BANDS
SAR_POLARIZATIONS: tuple[str, ...] = POLARIZATIONS


def _deprecated_spelling(obj: Any, old: str, new: str) -> Any:
    """``obj.<new>``, with a DeprecationWarning for the British spelling ``old``."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)
    return getattr(obj, new)


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs from its input; decloud reads this instead of hard-coding it.

    Attributes
    ----------
    name
        Registry name (``"dsen2_cr"``, ``"glf_cr"``, ``"align_cr"``).
    tile_size
        The only tile size (height = width) the model accepts, or ``None`` for any size.
    tile_multiple
        Height and width must be multiples of this (1: no constraint). For a model with a
        ``tile_size``, this is the constraint that the configured size itself satisfies.
    optical_bands
        Order of the 4 optical channels of ``cloudy`` (and of the output).
    sar_polarizations
        Order of the 2 SAR channels of ``sar``.
    normalization
        Name of the input normalization (``"m3rcr"``: optical reflectance x10000 clipped
        to [0, 10000] and divided by 10000; SAR dB, VV clipped to [-25, 0] and VH to
        [-32.5, 0], each scaled to [0, 1]; see :mod:`m3rcr_xr.normalize`).
    residual
        Whether the network predicts a residual that is added to the cloudy input.
    channels_last
        Whether the network runs faster on a GPU in ``channels_last`` layout: true for
        convolutions alone (cuDNN's fastest layout), false where window attention
        reshapes the features (on an H200, GLF-CR ran 11% (fp32) to 16% (bf16) slower
        in it).
    task
        ``"cloud_removal"`` (the output is the cloud-free image) or ``"landcover"``
        (the output is one logit per class of :attr:`classes`).
    classes
        A classifier's class names, in the order of its output channels; empty for
        cloud removal.
    """

    name: str
    tile_size: int | None
    tile_multiple: int
    optical_bands: tuple[str, ...] = OPTICAL_BANDS
    sar_polarizations: tuple[str, ...] = SAR_POLARIZATIONS
    normalization: str = "m3rcr"
    residual: bool = True
    channels_last: bool = False
    task: str = "cloud_removal"
    classes: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def normalisation(self) -> str:
        """Deprecated spelling of :attr:`normalization`."""
        return _deprecated_spelling(self, "normalisation", "normalization")

    @property
    def optical_channels(self) -> int:
        return len(self.optical_bands)

    @property
    def sar_channels(self) -> int:
        return len(self.sar_polarizations)

    @property
    def output_channels(self) -> int:
        """Channels of the output: the classes of a classifier, else the optical bands."""
        return len(self.classes) or self.optical_channels


class Network(nn.Module):
    """A network of this package: a registry :attr:`name` and a :class:`ModelSpec`
    (set in ``__init__``) that its properties read."""

    name: ClassVar[str] = ""
    spec: ModelSpec

    @property
    def optical_bands(self) -> tuple[str, ...]:
        """Order of the optical channels of ``cloudy`` and of the output."""
        return self.spec.optical_bands

    @property
    def sar_polarizations(self) -> tuple[str, ...]:
        """Order of the SAR channels of ``sar``."""
        return self.spec.sar_polarizations

    @property
    def normalization(self) -> str:
        """Name of the input normalization (see :class:`ModelSpec`)."""
        return self.spec.normalization

    @property
    def normalisation(self) -> str:
        """Deprecated spelling of :attr:`normalization`."""
        return _deprecated_spelling(self, "normalisation", "normalization")

    @property
    def tile_size(self) -> int | None:
        """The one accepted tile size, or ``None`` when any size works."""
        return self.spec.tile_size

    @property
    def tile_multiple(self) -> int:
        """Height and width must be multiples of this."""
        return self.spec.tile_multiple

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the same architecture."""
        return dict(self.spec.config)


class CloudRemovalNet(Network):
    """Base of the three networks: ``forward(cloudy, sar) -> cloud-free`` and a :class:`ModelSpec`.

    Subclasses set :attr:`name`, :attr:`spec` (in ``__init__``) and implement
    :meth:`output_conv` (the last convolution, zeroed by ``zero_residual_``).
    """

    #: the dataclass of the constructor's arguments, for networks whose constructor
    #: takes one's fields (``GLFCR``, ``AlignCR``); None: the arguments of ``__init__``
    config_class: ClassVar[type | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.config_class is not None:  # help() and inspect show the real arguments
            cls.__signature__ = inspect.signature(cls.config_class)  # type: ignore[attr-defined]

    def output_conv(self) -> nn.Conv2d:
        """The last convolution, whose output is the residual."""
        raise NotImplementedError

    def forward(self, cloudy: Tensor, sar: Tensor) -> Tensor:
        """Predict the cloud-free image.

        Parameters
        ----------
        cloudy
            (B, 4, H, W) normalised optical image (blue, green, red, nir); H and W as
            :attr:`spec` allows.
        sar
            (B, 2, H, W) normalised SAR (VV, VH) on the optical grid.

        Returns
        -------
        Tensor
            (B, 4, H, W): ``cloudy`` plus the predicted residual.
        """
        raise NotImplementedError

    def check_inputs(self, cloudy: Tensor, sar: Tensor) -> None:
        """Raise :class:`ModelConfigError` unless ``cloudy``/``sar`` fit this model."""
        spec = self.spec
        if cloudy.ndim != 4 or cloudy.shape[1] != spec.optical_channels:
            raise ModelConfigError(
                f"{spec.name}: cloudy must be (B, {spec.optical_channels}, H, W) "
                f"({', '.join(spec.optical_bands)}), got {tuple(cloudy.shape)}"
            )
        if sar.ndim != 4 or sar.shape[1] != spec.sar_channels:
            raise ModelConfigError(
                f"{spec.name}: sar must be (B, {spec.sar_channels}, H, W) "
                f"({', '.join(spec.sar_polarizations)}), got {tuple(sar.shape)}"
            )
        if sar.shape[0] != cloudy.shape[0] or sar.shape[-2:] != cloudy.shape[-2:]:
            raise ModelConfigError(
                f"{spec.name}: sar {tuple(sar.shape)} is not on the grid of cloudy "
                f"{tuple(cloudy.shape)} (resample SAR onto the optical grid first)"
            )
        check_size(spec, (int(cloudy.shape[-2]), int(cloudy.shape[-1])))


def check_size(spec: ModelSpec, size: int | tuple[int, int], remedy: str | None = None) -> None:
    """Raise :class:`ModelConfigError` unless a tile of ``size`` fits ``spec``.

    ``remedy``: what the message tells to change where the model takes tiles of one size
    only and ``size`` is another, in the caller's words (training names its ``crop``);
    by default, tiles of that size or a model built for ``size``.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ModelConfigError(f"{spec.name}: tile size must be positive, got {(height, width)}")
    if spec.tile_size is not None and (height, width) != (spec.tile_size, spec.tile_size):
        remedy = remedy or (
            f"use tiles of {spec.tile_size} or build the model with input_size={height}"
        )
        raise ModelConfigError(
            f"{spec.name}: built for {spec.tile_size}x{spec.tile_size} tiles only (its windowed "
            f"attention is fixed at construction), got {height}x{width}; {remedy}"
        )
    multiple = spec.tile_multiple
    if height % multiple or width % multiple:
        raise ModelConfigError(
            f"{spec.name}: tile height and width must be multiples of {multiple}, "
            f"got {height}x{width}"
        )


def constructor_arguments(cls: type[nn.Module]) -> dict[str, tuple[Any, Any]]:
    """The constructor arguments of a network class: ``{name: (type, default)}``.

    Read from the class's :attr:`~CloudRemovalNet.config_class` where it has one, else
    from its ``__init__``; the default is ``inspect.Parameter.empty`` for a required one.
    """
    config_class = getattr(cls, "config_class", None)  # the classifier has none
    hints = typing.get_type_hints(config_class or cls.__init__)
    parameters = inspect.signature(config_class or cls).parameters
    return {name: (hints.get(name, Any), p.default) for name, p in parameters.items()}


def check_task(spec: ModelSpec, task: str, use: str) -> None:
    """Raise :class:`ModelConfigError` unless the model of ``spec`` does ``task``.

    ``use`` says what the model was passed to (``"decloud"``, ``"classifier"``), so that
    a cloud-removal network given as a classifier, or the reverse, is named as such.
    """
    if spec.task != task:
        raise ModelConfigError(f"{spec.name} is a {spec.task} model; {use} needs a {task} model")
