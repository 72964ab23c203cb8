from . import _extension
