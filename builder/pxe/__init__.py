"""The PXE stage: a site's hosts installed over the network, each by its MAC, once.

    config.py     the site file's `pxe:` key (part of the validated site model)
    tree.py       builds the TFTP + HTTP tree and the dnsmasq / nginx configs
    menus.py      the boot entries (pxelinux, GRUB, iPXE) rendered per host
    grubimage.py  what the shipped GRUB image can do (linuxefi or linux)
    state.py      install-once state: which hosts have installed, switched in place
    serve.py      `ksbuild serve`: kickstarts by MAC and install reports over HTTP

Nothing here is imported by builder/pxe/__init__: the site model imports config.py alone.
"""
