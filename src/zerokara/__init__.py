"""zerokara: chapter 4 of "Deep Learning from Scratch" (ゼロから作るDeep Learning), fast.

The book's names and values, with compiled kernels underneath::

    from zerokara import TwoLayerNet, load_mnist

    (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label=True)
    net = TwoLayerNet(input_size=784, hidden_size=50, output_size=10)
    grad = net.numerical_gradient(x_train[:100], t_train[:100])  # milliseconds, not 30 s
"""

from ._version import __version__
from .functions import cross_entropy_error, mean_squared_error, sigmoid, sigmoid_grad, softmax
from .gradient import gradient_descent, numerical_diff, numerical_gradient
from .two_layer_net import TwoLayerNet
from .datasets import ChecksumError, DatasetError, DatasetNotFoundError, load_fashion_mnist, load_mnist
from .backends import get_backend
from .trainer import EpochRecord, History, TrainConfig, train

__all__ = [
    "__version__",
    "TwoLayerNet",
    "load_mnist",
    "load_fashion_mnist",
    "DatasetError",
    "ChecksumError",
    "DatasetNotFoundError",
    "sigmoid",
    "sigmoid_grad",
    "softmax",
    "cross_entropy_error",
    "mean_squared_error",
    "numerical_diff",
    "numerical_gradient",
    "gradient_descent",
    "get_backend",
    "TrainConfig",
    "History",
    "EpochRecord",
    "train",
]
