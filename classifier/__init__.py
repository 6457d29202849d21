"""The downstream side: timm classifiers, albumentations pipelines, training arms, metrics and the report."""
