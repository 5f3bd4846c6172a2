# amend-compat
qemu-img create -f qcow2 -o compat=0.10 a.qcow2 1M >/dev/null
qemu-img amend -o compat=1.1 a.qcow2
qemu-img info a.qcow2 | grep compat
