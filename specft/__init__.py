__version__ = "0.1.0"
"Fine-tune pretrained transformers for one industry's data: a Jupyter-native course and toolkit."
# Written by hand (nbdev only keeps `__version__` in step): the errors users catch, at the top level (from `specft.errors`, which loads no torch).
from .errors import SpecftError, SpecftDataError, SpecftConfigError, SpecftModelError, SpecftTrainingError
