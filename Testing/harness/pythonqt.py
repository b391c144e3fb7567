"""A PythonQt-compatible `qt` module over PySide6 (offscreen), so the real module and effect code runs in CI.

What PythonQt does differently from PySide6, and what this layer reproduces:
- Qt properties are Python attributes (`button.checked = True`, `label.text`, `combo.currentIndex`); a property
  shadows a getter of the same name, so `label.text()` fails here as it does in Slicer ("'str' is not callable");
- `obj.connect("toggled(bool)", slot)` / `obj.disconnect("toggled(bool)"[, slot])` with C++ signatures;
- `obj.name` is the objectName, `obj.className()` the C++ class name;
- one `qt` namespace holds QtCore, QtGui, QtWidgets and QUiLoader.
Every QObject class reached through this module is a subclass of the PySide6 class that adds those; widgets that
`QUiLoader` builds from a .ui are made from the same classes (and from the registered ctk / qMRML stand-ins).
"""
from __future__ import annotations

import os
import re
import sys
import types

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402

_SOURCES = (QtCore, QtGui, QtWidgets)
_SIGNATURE = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")
#: C++ argument types of a signature -> the PySide6 overload key
_ARG_TYPES = {"bool": bool, "int": int, "double": float, "float": float, "QString": str, "const QString&": str}


def _signal_of(obj, signature: str):
    match = _SIGNATURE.match(signature)
    if not match:
        raise TypeError(f"not a Qt signature: {signature!r}")
    name, args = match.group(1), [a.strip() for a in match.group(2).split(",") if a.strip()]
    alias = getattr(type(obj), "_pythonqt_signal_aliases", {}).get(f"{name}({','.join(args)})")
    signal = getattr(obj, alias or name, None)
    if signal is None or not hasattr(signal, "connect"):
        raise AttributeError(f"{obj.className()} has no signal {signature}")
    if alias is None and len(args) == 1 and args[0] in _ARG_TYPES:
        try:  # an overloaded C++ signal (e.g. currentIndexChanged(int) / (QString)) picks its overload
            return signal[_ARG_TYPES[args[0]]]
        except (KeyError, IndexError, TypeError):
            return signal
    return signal


class PythonQtMixin:
    """What PythonQt adds to every QObject (see the module docstring)."""

    _pythonqt_signal_aliases: dict = {}

    def __getattribute__(self, name):
        # PySide6 resolves `connect` / `disconnect` on QObjects before the class dict: route them here
        if name == "connect":
            return types.MethodType(PythonQtMixin._pythonqt_connect, self)
        if name == "disconnect":
            return types.MethodType(PythonQtMixin._pythonqt_disconnect, self)
        return super().__getattribute__(name)

    def _pythonqt_connect(self, signal, slot=None, *rest):
        if isinstance(signal, str):
            _signal_of(self, signal).connect(slot)
            return True
        return QtCore.QObject.connect(self, signal, slot, *rest)

    def _pythonqt_disconnect(self, signal=None, slot=None, *rest):
        if isinstance(signal, str):
            bound = _signal_of(self, signal)
            try:
                bound.disconnect(slot) if slot is not None else bound.disconnect()
            except (RuntimeError, TypeError):  # nothing connected: PythonQt returns False as well
                return False
            return True
        return QtCore.QObject.disconnect(self, signal, slot, *rest) if signal is not None else QtCore.QObject.disconnect(self)

    def className(self) -> str:
        return getattr(type(self), "_pythonqt_class_name", None) or QtCore.QObject.metaObject(self).className()

    @property
    def name(self) -> str:
        return QtCore.QObject.objectName(self)

    @name.setter
    def name(self, value: str) -> None:
        QtCore.QObject.setObjectName(self, value)


class _QtProperty:
    """A Qt property as a Python attribute on instances; on the class, the base's attribute of that name (so that
    static methods shadowed on instances still work: `qt.QTimer.singleShot(0, f)`, as in PythonQt)."""

    def __init__(self, name: str, base: type) -> None:
        self.name, self.base = name, base

    def __get__(self, obj, objtype=None):
        if obj is None:
            return getattr(self.base, self.name, self)
        return QtCore.QObject.property(obj, self.name)

    def __set__(self, obj, value) -> None:
        if not QtCore.QObject.setProperty(obj, self.name, value):
            # enum / flag properties want the enum type; PythonQt also accepts ints
            meta = QtCore.QObject.metaObject(obj)
            if not meta.property(meta.indexOfProperty(self.name)).write(obj, value):
                raise AttributeError(f"cannot set {self.name} of {meta.className()} to {value!r}")


_WRAPPED: dict[type, type] = {}


def wrap(base: type) -> type:
    """The PythonQt-like subclass of a PySide6 QObject class (cached)."""
    if base in _WRAPPED:
        return _WRAPPED[base]
    if issubclass(base, PythonQtMixin):
        return base
    namespace: dict = {"_pythonqt_class_name": base.__name__, "__module__": __name__}
    meta = base.staticMetaObject
    for index in range(meta.propertyCount()):
        prop_name = meta.property(index).name()
        if prop_name != "name":
            namespace[prop_name] = _QtProperty(prop_name, base)
    cls = type(base.__name__, (PythonQtMixin, base), namespace)
    _WRAPPED[base] = cls
    return cls


#: Slicer / CTK class name -> stand-in class, registered by the widget modules (used by the loader too)
CUSTOM_CLASSES: dict[str, type] = {}


def register(cls: type, name: str | None = None) -> type:
    CUSTOM_CLASSES[name or cls.__name__] = cls
    return cls


def lookup(name: str):
    if name in CUSTOM_CLASSES:
        return CUSTOM_CLASSES[name]
    for source in _SOURCES:
        value = getattr(source, name, None)
        if value is not None:
            if isinstance(value, type) and issubclass(value, QtCore.QObject):
                return wrap(value)
            return value
    raise AttributeError(name)


class QUiLoader(PythonQtMixin, QtUiTools.QUiLoader):
    """Builds every widget and layout of a .ui from this module's classes; `<connections>` are left to the caller
    (PythonQt's loader cannot connect C++ signatures such as mrmlSceneChanged(vtkMRMLScene*) to Python either:
    `harness.slicer_gui.load_ui` makes them, so a missing one in the .ui leaves the widget without a scene)."""

    _pythonqt_class_name = "QUiLoader"

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.missing: list[str] = []  # Slicer / CTK classes the harness has no stand-in for

    def createWidget(self, class_name, parent=None, name=""):
        try:
            cls = lookup(class_name)
        except AttributeError:
            if not class_name.startswith("Q"):  # qMRML*, qSlicer*, ctk*: a placeholder, reported by the caller
                self.missing.append(class_name)
                cls = wrap(QtWidgets.QWidget)
            else:
                return super().createWidget(class_name, parent, name)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget

def application() -> QtWidgets.QApplication:
    """The one QApplication of the process (offscreen)."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = wrap(QtWidgets.QApplication)(sys.argv[:1])
    return app


def build_module() -> types.ModuleType:
    """The `qt` module as Slicer's Python sees it."""
    module = types.ModuleType("qt", __doc__)

    def __getattr__(name):
        if name == "QUiLoader":
            return QUiLoader
        return lookup(name)

    module.__getattr__ = __getattr__
    module.Qt = QtCore.Qt
    return module
