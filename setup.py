"""Packaging for Conveyor: installs every room (pipeline/, components/, schema/, registry/, serving/, kubeflow/,
cli/) so dotted paths resolve the same way locally, in tests and in the container."""

from setuptools import find_packages, setup

ROOMS = ("pipeline", "components", "schema", "registry", "serving", "kubeflow", "cli")

setup(
    name="conveyor",
    version="0.1.0",
    description="A production ML platform on TensorFlow Extended (TFX).",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=[f"{room}{sub}" for room in ROOMS for sub in ("", ".*")]),
    py_modules=["local_runner"],
    include_package_data=True,
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow==2.16.2",
        "tf_keras==2.16.0",
        "tensorflow-data-validation==1.16.1",
        "tensorflow-transform==1.16.0",
        "tensorflow_model_analysis==0.47.1",
        "apache-beam[gcp]==2.61.0",
        "ml-metadata==1.16.0",
        "kfp==2.5.0",
        "PyYAML==6.0.3",
        "matplotlib==3.9.2",
        # A shared ML Metadata store's lock (PostgreSQL advisory locks); ml_metadata itself connects natively.
        "psycopg2-binary==2.9.10",
        # The same for MySQL-compatible stores (GET_LOCK), and a connectivity check with the server's reason.
        "PyMySQL==1.2.4",
    ],
    # The REST API's description ships with the server: the fuzz test and clients read it from the package.
    package_data={"serving": ["openapi.json"]},
    # schemathesis: the fuzz test of `conveyor serve` against that description (4.10 is the last release
    # that accepts the pinned pytest 8.0). playwright: the web UI's browser tests, driving Debian's chromium
    # (no browser download). pytest-xdist: `make test` runs the suite in two processes, one per core; most
    # tests spend their time in one Python thread (Beam's in-process runner, a server), so two halve the wait.
    extras_require={
        "test": [
            "pytest==8.0.0",
            "pytest-xdist==3.6.1",
            "ruff==0.17.6",
            "hypothesis==6.168.5",
            "schemathesis==4.10.2",
            "playwright==1.65.2",
        ]
    },
    entry_points={"console_scripts": ["conveyor=cli.main:main"]},
)
