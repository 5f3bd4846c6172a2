# io-reopen-bad
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'reopen -o nosuch=1' a.qcow2; echo rc=$?
