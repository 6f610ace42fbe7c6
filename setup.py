"""tfgan_eff: data-efficient GAN training in TensorFlow 2 / Keras 3."""

import setuptools

setuptools.setup(
    name="tfgan_eff",
    version="0.1.0",
    description=("Data-efficient GAN training (BigGAN, StyleGAN2; DiffAugment, ADA, "
                 "InsGen, S3GAN, AdaFM) on tf.distribute, configured with gin."),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["tfgan_eff", "tfgan_eff.*"]),
    scripts=["bin/train", "bin/eval", "bin/export", "bin/sample", "bin/benchmark",
             "bin/study"],
    python_requires=">=3.10",
    install_requires=[
        # tensorflow-cpu is enough where there is no GPU; with a GPU install
        # `tensorflow[and-cuda]` instead (same version range).
        "tensorflow-cpu>=2.21; platform_machine=='x86_64'",
        "tensorflow>=2.21; platform_machine!='x86_64'",
        "keras>=3.0",
        "gin-config>=0.5",
        "absl-py>=1.0",
        "tensorflow-datasets>=4.9",
        "tensorboard>=2.21",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-learn>=1.3",  # the built-in dataset: sklearn's bundled handwritten digits
        "pillow>=10.0",       # clean-fid style resizing and PNG grids
    ],
    extras_require={"test": ["pytest>=8", "matplotlib>=3.7"], "study": ["matplotlib>=3.7"],
                    # tools/ that run reference networks (PyTorch); never the core or CI
                    "reference": ["torch>=2.1"]},
)
