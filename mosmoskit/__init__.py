"""mosmoskit: multi-organ segmentation facilitated by medical report supervision (MOSMOS).

Pre-train an image encoder on image-report pairs (global contrastive learning plus organ-tag
recognition whose tag head yields pixel-tag attention maps), then fine-tune segmentation networks
that take those maps in. See the README for the two commands that set up and run everything.
"""

__version__ = "0.1.0"
