"""Parse kickstarts with the real RHEL 7.9 pykickstart (1.99.66.22), by hand, not in CI.

pykickstart 1.99.66.22 is Python 2 only and not on PyPI. With a Python 2.7 and a checkout of
github.com/pykickstart/pykickstart at tag r1.99.66.22-1 in PYKICKSTART_199:

    python2.7 docs/tools/el7_grammar_check.py out/ks/*.cfg

`urlgrabber` (which 1.99.66.22 imports for %ksappend and remote kickstarts) is replaced by a
stand-in that fetches nothing; %include is not followed. Warnings count as errors, as in
ksbuild's own validator. Exit status 1 if any file is refused.
"""

import os
import sys
import types
import warnings

sys.path.insert(0, os.environ.get("PYKICKSTART_199", "pykickstart-r1.99.66.22-1"))


def _no_network(*args, **kwargs):
    raise IOError("el7_grammar_check fetches nothing")


grabber = types.ModuleType("urlgrabber.grabber")
grabber.URLGrabError = IOError
urlgrabber = types.ModuleType("urlgrabber")
urlgrabber.urlread = urlgrabber.urlopen = _no_network
urlgrabber.grabber = grabber
sys.modules.update({"urlgrabber": urlgrabber, "urlgrabber.grabber": grabber})

from pykickstart.parser import KickstartParser  # noqa: E402
from pykickstart.version import RHEL7, makeVersion  # noqa: E402


def main(paths):
    refused = 0
    for path in paths:
        parser = KickstartParser(makeVersion(RHEL7), followIncludes=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                with open(path) as handle:
                    parser.readKickstartFromString(handle.read())
            except Exception as exc:  # every refusal, whatever pykickstart raises
                refused += 1
                print("%s: %s: %s" % (path, type(exc).__name__, " ".join(str(exc).split())))
    print("%d kickstart(s), %d refused by pykickstart 1.99.66.22 (RHEL7)" % (len(paths), refused))
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
