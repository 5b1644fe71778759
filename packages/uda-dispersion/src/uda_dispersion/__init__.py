"""Instance directional dispersion maps from a label map and a depth map, on CPU and CUDA.

Each connected instance gets the spherical variance of the directions, in the joint
image-depth space, from its centroid to the centroids of the instances of other classes
(README, "Definition"). ``load_auxiliary`` reads the dispersion method's auxiliary network,
ours or the published one.
"""

from uda_dispersion._backend import cuda_built
from uda_dispersion.auxiliary import load_auxiliary, published_auxiliary_state
from uda_dispersion.extractor import Instances, InstanceTable, dispersion_map, instances

__version__ = "0.1.0"
__all__ = [
    "InstanceTable",
    "Instances",
    "cuda_built",
    "dispersion_map",
    "instances",
    "load_auxiliary",
    "published_auxiliary_state",
]
