# io-open-cmd
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'open a.qcow2' -c 'read 0 512' | sed 's/(.*)/X/'
