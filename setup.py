"""
Packaging for rosteradmin.

The twistd plugin lives in C{twisted/plugins/} (a namespace shared with
Twisted, so no C{__init__.py} there); listing C{twisted.plugins} installs it,
and C{twistd --help} then lists C{rosteradmin}.
"""

import re

from setuptools import find_packages, setup


def version() -> str:
    """
    The release, from C{rosteradmin/__init__.py}, its one source: read, not
    imported, so that building runs none of the package's code.
    """
    with open("rosteradmin/__init__.py", encoding="utf-8") as init:
        match = re.search(r'^__version__ = "([^"]+)"$', init.read(), re.MULTILINE)
    assert match is not None, "rosteradmin/__init__.py sets no __version__"
    return match.group(1)


setup(
    name="rosteradmin",
    version=version(),
    description="Web-app-owned rosters for an XMPP server, as an XEP-0114 component",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "bench*", "rosteradmin_demo*"]) + ["twisted.plugins"],
    install_requires=[
        "twisted>=24.7",
        "wokkel==18.0.0",
        "treq>=24.9",
        "prometheus_client>=0.20",
    ],
    extras_require={
        # --state postgresql://...: an extra, not a requirement, since the
        # default SQLite file needs none, and the binary wheel brings its
        # own libpq and OpenSSL to every install that would never use them.
        "postgresql": ["psycopg[binary]>=3.1"],
        "test": [
            # tests/test_stateengines.py runs every storage, PostgreSQL too.
            "psycopg[binary]>=3.1",
            "pytest>=8",
            # tests/test_docs.py reads the documents as GitHub renders them
            # (CommonMark, tables) and the YAML configuration they show.
            "markdown-it-py>=3",
            "pyyaml>=6",
            # tests/test_release.py builds the changelog (docs/releasing.md).
            "towncrier>=24.7",
            # tests/test_shape.py: class sizes and cyclomatic complexity.
            "radon>=6",
            "pytest-twisted>=1.14",
            "hypothesis>=6",
            "schemathesis>=4",
            # Pinned: scripts/test.sh fails on any mypy error, and a newer
            # mypy finds new ones; upgrade both on purpose.
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
        ],
    },
    entry_points={"console_scripts": ["rosteradmin-ctl = rosteradmin.ctl:cli"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Chat",
    ],
)
