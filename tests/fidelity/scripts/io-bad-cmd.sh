# io-bad-cmd
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'frobnicate' a.qcow2; echo rc=$?
