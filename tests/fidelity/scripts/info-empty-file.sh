# info-empty-file
: > e.img
qemu-img info e.img | grep -v 'disk size'
