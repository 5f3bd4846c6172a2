# io-map-raw
qemu-img create -f raw a.raw 1M >/dev/null
qemu-io -f raw -c 'write 64k 64k' -c map a.raw | sed 's/(.*)/X/'
