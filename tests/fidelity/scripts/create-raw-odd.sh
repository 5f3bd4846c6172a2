# create-raw-odd
qemu-img create -f raw a.raw 1000
qemu-img info a.raw | grep 'virtual size'
