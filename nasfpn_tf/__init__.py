"""nasfpn_tf: NAS-FPN (Ghiasi et al., CVPR 2019, arXiv:1904.07392) in TF/Keras.

Merging cells, the NAS-FPN neck built from any architecture spec, a RetinaNet
around it, and the reinforcement-learning architecture search.
"""

__version__ = "0.1.0"
