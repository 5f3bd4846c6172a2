# rebase-missing
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img rebase -b nosuch.qcow2 -F qcow2 a.qcow2; echo rc=$?
