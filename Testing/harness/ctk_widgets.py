"""Stand-ins for the CTK widgets the module's .ui and the effect use (the `ctk` module), on PySide6.

Only the API our code and .ui touch; each is a real Qt widget, so it renders in the panel screenshot.
"""
from __future__ import annotations

import types

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Property, Signal

from .pythonqt import register, wrap


@register
class ctkCollapsibleButton(wrap(QtWidgets.QGroupBox)):
    """A titled section that folds (CTK draws a button; a checkable-looking group box here)."""

    _pythonqt_class_name = "ctkCollapsibleButton"
    contentsCollapsed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False

    def _get_text(self) -> str:
        return QtWidgets.QGroupBox.title(self)

    def _set_text(self, value: str) -> None:
        QtWidgets.QGroupBox.setTitle(self, value)

    def _get_collapsed(self) -> bool:
        return self._collapsed

    def _set_collapsed(self, value: bool) -> None:
        self._collapsed = bool(value)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        self.contentsCollapsed.emit(self._collapsed)

    text = Property(str, _get_text, _set_text)
    collapsed = Property(bool, _get_collapsed, _set_collapsed)


@register
class ctkPathLineEdit(wrap(QtWidgets.QLineEdit)):
    """A path field (CTK adds a browse button and history); `currentPath` and its change signal."""

    _pythonqt_class_name = "ctkPathLineEdit"
    currentPathChanged = Signal(str)
    Dirs, Files, Drives, NoDot, NoDotDot, Readable, Writable, Executable = 1, 2, 4, 8, 16, 32, 64, 128

    def __init__(self, parent=None):
        super().__init__(parent)
        self._filters = self.Files
        self._name_filters: list = []
        self._setting_key = ""
        QtWidgets.QLineEdit.textChanged.__get__(self).connect(self.currentPathChanged.emit)

    def _get_path(self) -> str:
        return QtWidgets.QLineEdit.text(self)

    def _set_path(self, value: str) -> None:
        QtWidgets.QLineEdit.setText(self, value or "")

    def _get_filters(self) -> int:
        return self._filters

    def _set_filters(self, value: int) -> None:
        self._filters = int(value)

    def _get_name_filters(self) -> list:
        return list(self._name_filters)

    def _set_name_filters(self, value) -> None:
        self._name_filters = list(value)

    def _get_setting_key(self) -> str:
        return self._setting_key

    def _set_setting_key(self, value: str) -> None:
        self._setting_key = value

    def addCurrentPathToHistory(self) -> None:
        pass

    currentPath = Property(str, _get_path, _set_path)
    filters = Property(int, _get_filters, _set_filters)
    nameFilters = Property("QStringList", _get_name_filters, _set_name_filters)
    settingKey = Property(str, _get_setting_key, _set_setting_key)


@register
class ctkSliderWidget(wrap(QtWidgets.QDoubleSpinBox)):
    """A slider with a spin box (a spin box here): value, range, step, decimals; valueChanged(double)."""

    _pythonqt_class_name = "ctkSliderWidget"


@register
class ctkCheckBox(wrap(QtWidgets.QCheckBox)):
    _pythonqt_class_name = "ctkCheckBox"


@register
class ctkComboBox(wrap(QtWidgets.QComboBox)):
    _pythonqt_class_name = "ctkComboBox"


def build_module() -> types.ModuleType:
    module = types.ModuleType("ctk", "CTK widget stand-ins for the SAMAdapt3D test harness")
    for cls in (ctkCollapsibleButton, ctkPathLineEdit, ctkSliderWidget, ctkCheckBox, ctkComboBox):
        setattr(module, cls._pythonqt_class_name, cls)
    return module
