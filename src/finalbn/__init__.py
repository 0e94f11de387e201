"""finalbn: does one extra BatchNorm before the softmax rescue the minority class?"""

__version__ = "0.1.0"
