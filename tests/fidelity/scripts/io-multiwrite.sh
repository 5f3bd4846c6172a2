# io-multiwrite
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'aio_write -P 1 0 4k' -c 'aio_write -P 2 8k 4k' -c aio_flush -c 'read -P 2 8k 4k' a.qcow2 | sed 's/(.*)/X/' | sort  # aio completion order is not fixed
