"""A stand-in for `slicer.parameterNodeWrapper` (Slicer >= 5.2), which slicer-core does not ship.

The subset our module uses: typed fields (MRML node references, str / bool / int / float with defaults) stored in a
real vtkMRMLScriptedModuleNode, `.parameterNode`, and `connectGui(ui)` / `disconnectGui(tag)` that keep widgets
whose `SlicerParameterName` dynamic property names a field in step with it, both ways.
"""
from __future__ import annotations

import types
import typing

import slicer

_SCALARS = (str, bool, int, float)


def _is_node_type(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, slicer.vtkMRMLNode)


def _encode(kind, value) -> str:
    return ("true" if value else "false") if kind is bool else str(value)


def _decode(kind, text: str):
    if kind is bool:
        return text == "true"
    return kind(text)


class _Binding:
    """One widget <-> one field."""

    def __init__(self, wrapper, name: str, widget) -> None:
        self.wrapper, self.name, self.widget = wrapper, name, widget

    def to_widget(self) -> None:
        value = getattr(self.wrapper, self.name)
        widget = self.widget
        cls = widget.className()
        widget.blockSignals(True)
        try:
            if cls in ("qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"):
                widget.setCurrentNode(value)
            elif cls in ("QCheckBox", "ctkCheckBox", "QRadioButton") or (cls == "QPushButton" and widget.checkable):
                widget.checked = bool(value)
            elif cls in ("QSpinBox", "QDoubleSpinBox", "ctkSliderWidget", "QSlider"):
                widget.value = value
            elif cls in ("QComboBox", "ctkComboBox"):
                index = widget.findText(str(value))
                widget.currentIndex = max(index, 0)
            elif cls == "ctkPathLineEdit":
                widget.currentPath = str(value)
            elif cls == "QLineEdit":
                widget.text = str(value)
            else:
                raise TypeError(f"parameterNodeWrapper stand-in: no GUI connector for {cls} ({self.name})")
        finally:
            widget.blockSignals(False)

    _SIGNALS = {"qMRMLNodeComboBox": "currentNodeChanged", "qMRMLSegmentSelectorWidget": "currentNodeChanged",
                "QCheckBox": "toggled", "ctkCheckBox": "toggled", "QRadioButton": "toggled", "QPushButton": "toggled",
                "QSpinBox": "valueChanged", "QDoubleSpinBox": "valueChanged", "ctkSliderWidget": "valueChanged",
                "QSlider": "valueChanged", "QComboBox": "currentTextChanged", "ctkComboBox": "currentTextChanged",
                "ctkPathLineEdit": "currentPathChanged", "QLineEdit": "textChanged"}

    def connect(self) -> None:
        self._slot = lambda value: setattr(self.wrapper, self.name, value)
        self._signal = getattr(self.widget, self._SIGNALS[self.widget.className()])
        self._signal.connect(self._slot)

    def disconnect(self) -> None:
        self._signal.disconnect(self._slot)


def parameterNodeWrapper(cls):
    fields = typing.get_type_hints(cls)  # the module may use `from __future__ import annotations`
    defaults = {name: getattr(cls, name) for name in fields if hasattr(cls, name)}

    class Wrapper:
        __annotations__ = fields

        def __init__(self, parameterNode) -> None:
            object.__setattr__(self, "parameterNode", parameterNode)
            object.__setattr__(self, "_guis", {})
            for name, kind in fields.items():
                if not _is_node_type(kind) and not parameterNode.GetParameter(name):
                    parameterNode.SetParameter(name, _encode(kind, defaults.get(name, kind())))

        def __getattr__(self, name):
            kind = fields.get(name)
            if kind is None:
                if name[:1].isupper():  # AddObserver, RemoveObserver, Modified, ... of the MRML node
                    return getattr(self.parameterNode, name)
                raise AttributeError(name)
            if _is_node_type(kind):
                return self.parameterNode.GetNodeReference(name)
            return _decode(kind, self.parameterNode.GetParameter(name))

        def __setattr__(self, name, value) -> None:
            kind = fields.get(name)
            if kind is None:
                raise AttributeError(f"{cls.__name__} has no parameter {name}")
            if _is_node_type(kind):
                if value is not None and not value.IsA(kind.__name__):
                    raise ValueError(f"{name} must be a {kind.__name__}, got {value.GetClassName()}")
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
                    raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__}")
                self.parameterNode.SetParameter(name, _encode(kind, value))

        def connectGui(self, ui):
            widgets = ui.__dict__.values() if not hasattr(ui, "findChildren") else ui.findChildren(object)
            bindings = []
            for widget in widgets:
                prop = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
                if isinstance(prop, str) and prop in fields:
                    binding = _Binding(self, prop, widget)
                    binding.to_widget()
                    binding.connect()
                    bindings.append(binding)

            def refresh(*_):
                for binding in bindings:
                    binding.to_widget()

            tag = self.parameterNode.AddObserver(slicer.vtkMRMLNode.ReferenceModifiedEvent, refresh)
            tag2 = self.parameterNode.AddObserver(0x21, refresh)  # vtkCommand::ModifiedEvent
            key = len(self._guis) + 1
            self._guis[key] = (bindings, (tag, tag2))
            return key

        def disconnectGui(self, tag) -> None:
            bindings, tags = self._guis.pop(tag, ([], ()))
            for binding in bindings:
                binding.disconnect()
            for observer in tags:
                self.parameterNode.RemoveObserver(observer)

    Wrapper.__name__ = Wrapper.__qualname__ = cls.__name__
    return Wrapper


def build_module() -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper", __doc__)
    module.parameterNodeWrapper = parameterNodeWrapper
    return module
