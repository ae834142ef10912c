"""Install media: fetching official CentOS 7 ISOs and repacking them with a kickstart inside."""
