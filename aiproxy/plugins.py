"""The provider registry: entry points of the ``aiproxy.providers`` group, plus ``register``.

First-party providers are found exactly like third-party ones: through installed entry points.
The registry, not each plugin, checks the plugin API version a plugin declares.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from aiproxy.config import ConfigError
from aiproxy.observability import get_logger
from aiproxy.provider import PLUGIN_API_VERSION, SUPPORTED_PLUGIN_API_VERSIONS, Provider

__all__ = ["ENTRY_POINT_GROUP", "ProviderRegistry", "UnknownProviderError"]

ENTRY_POINT_GROUP = "aiproxy.providers"

log = get_logger("aiproxy.plugins")


def api_version_error(name: str, origin: str, cls: type[Provider]) -> str | None:
    """Why ``cls`` cannot run on this core's plugin API, or ``None`` when it can.

    A plugin that declares no version predates the declaration (plugin API 1): it is loaded
    with a warning, since plugin API 2 removed only a field such plugins hardly used.
    """
    declared = cls.plugin_api_version
    if declared is None:
        return None
    supported = ", ".join(map(str, sorted(SUPPORTED_PLUGIN_API_VERSIONS)))
    if isinstance(declared, bool) or not isinstance(declared, int):
        return (f"provider {name!r} ({origin}) declares plugin_api_version {declared!r}, "
                f"which is not a version number (this aiproxy runs {supported})")
    if declared in SUPPORTED_PLUGIN_API_VERSIONS:
        return None
    if declared > PLUGIN_API_VERSION:
        return (f"provider {name!r} ({origin}) was written for plugin API {declared}; this "
                f"aiproxy runs {supported}: upgrade aiproxy")
    return (f"provider {name!r} ({origin}) was written for plugin API {declared}; this aiproxy "
            f"runs {supported}: upgrade the plugin (CHANGELOG.md, \"Plugin API\", says what "
            "changed)")


class UnknownProviderError(ConfigError):
    """A config names a provider no installed plugin offers."""


class ProviderRegistry:
    """Names → provider classes; entry points load lazily (a broken plugin hurts only its users)."""

    def __init__(self, *, discover: bool = True) -> None:
        self._entry_points: dict[str, EntryPoint] = {}
        self._classes: dict[str, type[Provider]] = {}
        self._undeclared: set[type[Provider]] = set()  # warned about once
        if discover:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                self._entry_points.setdefault(ep.name, ep)

    def register(self, name: str, cls: type[Provider]) -> None:
        """Add (or replace) a provider at run time: tests and embedding applications.

        A class written for a plugin API this core does not run is a :class:`ConfigError`.
        """
        if not (isinstance(cls, type) and issubclass(cls, Provider)):
            raise TypeError(f"{cls!r} is not a subclass of aiproxy.provider.Provider")
        self._check_api(name, f"{cls.__module__}:{cls.__qualname__}", cls)
        self._classes[name] = cls

    def _check_api(self, name: str, origin: str, cls: type[Provider]) -> None:
        problem = api_version_error(name, origin, cls)
        if problem is not None:
            raise ConfigError([problem])
        if cls.plugin_api_version is None and cls not in self._undeclared:
            self._undeclared.add(cls)
            log.warning("plugin_api_version_undeclared", provider=name, plugin=origin,
                        plugin_api=PLUGIN_API_VERSION,
                        hint="declare plugin_api_version on the Provider class")

    def unregister(self, name: str) -> None:
        self._classes.pop(name, None)
        self._entry_points.pop(name, None)

    def names(self) -> list[str]:
        return sorted(set(self._entry_points) | set(self._classes))

    def describe(self) -> list[tuple[str, str]]:
        """``(name, where it comes from)`` for ``--list-providers``."""
        rows = []
        for name in self.names():
            ep = self._entry_points.get(name)
            cls = self._classes.get(name)
            if cls is not None and (ep is None or f"{cls.__module__}:{cls.__qualname__}"
                                    != ep.value):
                rows.append((name, f"{cls.__module__}:{cls.__qualname__} (registered)"))
            elif ep is not None:
                dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist else ""
                rows.append((name, f"{ep.value}{dist}"))
        return rows

    def get(self, name: str) -> type[Provider]:
        """The class for ``name``; :class:`UnknownProviderError` lists what is installed."""
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        ep = self._entry_points.get(name)
        if ep is None:
            raise UnknownProviderError(
                [f"unknown provider {name!r}; installed providers: {', '.join(self.names())}"]
            )
        try:
            loaded = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is a config error, not a crash
            raise ConfigError(
                [f"provider {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"]
            ) from None
        if not (isinstance(loaded, type) and issubclass(loaded, Provider)):
            raise ConfigError([f"provider {name!r} ({ep.value}) is not an aiproxy Provider"])
        self._check_api(name, ep.value, loaded)
        self._classes[name] = loaded
        return loaded
