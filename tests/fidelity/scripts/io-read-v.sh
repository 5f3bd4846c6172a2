# io-read-v
qemu-img create -f raw a.raw 1M >/dev/null
qemu-io -f raw -c 'write -P 0x41 0 32' -c 'read -v 0 48' a.raw | sed 's/(.*)/X/'
