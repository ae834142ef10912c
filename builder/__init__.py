"""ksbuild: CentOS 7 KVM-host kickstarts, install ISOs and PXE trees from one site file."""

__version__ = "0.1.0"
