# rebase-unsafe
qemu-img create -f qcow2 base.qcow2 1M >/dev/null
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 >/dev/null
qemu-img create -f qcow2 new.qcow2 1M >/dev/null
qemu-img rebase -u -b new.qcow2 -F qcow2 top.qcow2
qemu-img info top.qcow2 | grep backing
