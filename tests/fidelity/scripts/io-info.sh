# io-info
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c info a.qcow2
