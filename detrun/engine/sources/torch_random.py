"""PyTorch: the default generators at start, `manual_seed(x)`, `torch.seed()`, CUDA seeds and `Generator().seed()`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from detrun.engine.patcher import ImportTimeSource
from detrun.engine.sources.block_rng_state import found_imported
from detrun.trace.registry import (  # the kinds, their payload schemas and versions
    TORCH_CUDA_SEED as CUDA_SEED_KIND,
    TORCH_GENERATOR_SEED as GENERATOR_SEED_KIND,
    TORCH_INITIAL_SEED as INITIAL_KIND,
    TORCH_MANUAL_SEED as MANUAL_KIND,
    TORCH_SEED as SEED_KIND,
)

if TYPE_CHECKING:
    from detrun.engine.session import Session



class TorchSource(ImportTimeSource):
    """Hook torch's seeding entry points as soon as torch is imported."""

    module = "torch"

    def hook(self, session: Session, torch: Any) -> None:
        patch = self.patcher.setattr
        original_manual_seed = torch.random.manual_seed
        cuda_manual_seed = torch.cuda.manual_seed
        cuda_manual_seed_all = torch.cuda.manual_seed_all

        def exchanged_seed(kind: str, what: str, bits: int = 63) -> int:
            return session.exchange(kind, session.fresh_seed(bits), what)

        def guarded(where: str, fallback: Callable[[], int], body: Callable[[], int]) -> int:
            try:
                return body()
            except Exception as exc:  # noqa: BLE001
                session.hook_failed(where, exc)
                return fallback()

        in_process = bool(session.settings.get("in_process"))
        if not (in_process and found_imported(session, "torch", self.imported_before)):
            # torch seeds its CPU generator from OS entropy at start; record that seed so a replay
            # is anchored. (An in-process block that finds torch imported finds the generators
            # wherever earlier code left them: block_rng_state records their exact states instead.)
            initial = session.exchange(INITIAL_KIND, torch.initial_seed(), "torch import")
            # Seed every device from it, recording and replaying alike. Each CUDA device's default
            # generator otherwise draws its own OS-entropy seed when CUDA starts
            # (at::cuda::detail::getDefaultCUDAGenerator), which no event records: an unseeded
            # script's GPU dropout and torch.randint(device="cuda") would differ on replay.
            # torch.manual_seed only queues the device seeds, so CUDA is not started here.
            original_manual_seed(initial)

        # Mirrors torch.random.manual_seed (torch 2.x): the value may come from the clock.
        def manual_seed(seed: Any) -> Any:
            try:
                value = int(seed)
            except (TypeError, ValueError):
                return original_manual_seed(seed)  # let torch raise its own error
            value = guarded("torch.manual_seed", lambda: value,
                            lambda: session.exchange(MANUAL_KIND, value, "torch.manual_seed()"))
            return original_manual_seed(value)

        # Mirrors torch.random.seed (torch 2.x): a nondeterministic seed for the CPU generator that
        # is also given to CUDA (and MPS/XPU); manual_seed does the same fan-out.
        def seed() -> int:
            value = guarded("torch.seed", lambda: torch.default_generator.seed(),
                            lambda: exchanged_seed(SEED_KIND, "torch.seed()"))
            original_manual_seed(value)
            return value

        # Mirrors torch.cuda.random.seed / seed_all (torch 2.x): lazily queued until CUDA starts.
        def cuda_seed() -> None:
            value = guarded("torch.cuda.seed", lambda: session.fresh_seed(63),
                            lambda: exchanged_seed(CUDA_SEED_KIND, "torch.cuda.seed()"))
            cuda_manual_seed(value)

        def cuda_seed_all() -> None:
            value = guarded("torch.cuda.seed_all", lambda: session.fresh_seed(63),
                            lambda: exchanged_seed(CUDA_SEED_KIND, "torch.cuda.seed_all()"))
            cuda_manual_seed_all(value)

        for module in (torch, torch.random):
            patch(module, "manual_seed", manual_seed)
            patch(module, "seed", seed)
        for module in (torch.cuda, torch.cuda.random):
            patch(module, "seed", cuda_seed)
            patch(module, "seed_all", cuda_seed_all)
        patch(torch, "Generator", _generator_class(torch, session))


def _generator_class(torch: Any, session: Session) -> type:
    """Build a torch.Generator subclass whose seed() is recorded; isinstance checks keep working."""
    base = torch._C.Generator

    class GeneratorMeta(type(base)):  # type: ignore[misc]
        """Make the default generator and other native generators count as instances."""

        def __instancecheck__(cls, instance: Any) -> bool:
            return isinstance(instance, base)

        def __subclasscheck__(cls, subclass: type) -> bool:
            return issubclass(subclass, base)

    class Generator(base, metaclass=GeneratorMeta):  # type: ignore[misc, valid-type]
        __doc__ = base.__doc__

        # Mirrors torch._C.Generator.seed (torch 2.x): a nondeterministic seed, set and returned.
        def seed(self) -> int:
            try:
                value = session.exchange(GENERATOR_SEED_KIND, session.fresh_seed(63), "torch.Generator.seed()")
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("torch.Generator.seed", exc)
                return base.seed(self)
            self.manual_seed(value)
            return value

    Generator.__qualname__ = "Generator"
    return Generator
