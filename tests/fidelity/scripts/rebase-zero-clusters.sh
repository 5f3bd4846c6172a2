# rebase-zero-clusters
qemu-img create -f qcow2 base.qcow2 1M >/dev/null
qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 >/dev/null
qemu-img create -f qcow2 new.qcow2 1M >/dev/null
qemu-io -c 'write -P 5 0 64k' new.qcow2 >/dev/null
qemu-img rebase -b new.qcow2 -F qcow2 top.qcow2
qemu-img map --output=json top.qcow2
