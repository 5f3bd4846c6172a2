# create-raw
qemu-img create -f raw a.raw 1M
qemu-img info a.raw | grep -v 'disk size'
