"""capmix: improving image-text datasets with synthetic captions.

A Snakemake pipeline reproducing Nguyen et al. (2023), "Improving Multimodal
Datasets with Image Captioning". All stage logic lives in this package (one
module per stage) so it can be tested without Snakemake; the rules in
``workflow/rules`` only wire files to these functions.
"""

__version__ = "0.1.0"
