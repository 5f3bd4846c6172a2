# io-write-z
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 128k' -c 'write -z 0 64k' -c map a.qcow2 | sed 's/(.*)/X/'
