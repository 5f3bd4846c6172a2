#!/usr/bin/env bash
# A script written for qemu-img and qemu-io. It runs unchanged with blocklayer-img and
# blocklayer-io substituted through $QEMU_IMG and $QEMU_IO.
set -u
cd "$WORK"
step() { echo "== $*"; "$@"; echo "rc=$?"; }

step $QEMU_IMG create -f qcow2 base.qcow2 16M
step $QEMU_IO -f qcow2 -c 'write -P 0x11 0 4M' -c 'write -z 8M 1M' base.qcow2
step $QEMU_IMG create -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
step $QEMU_IO -f qcow2 -c 'write -P 0x22 2M 4M' mid.qcow2
step $QEMU_IMG create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
step $QEMU_IO -f qcow2 -c 'write -P 0x33 5M 1M' -c 'write -z 12M 64k' top.qcow2
step $QEMU_IMG info --backing-chain top.qcow2
step $QEMU_IMG map top.qcow2
step $QEMU_IMG map --output=json top.qcow2
step $QEMU_IMG check top.qcow2
step $QEMU_IMG commit top.qcow2
step $QEMU_IMG map --output=json mid.qcow2
step $QEMU_IMG rebase -b base.qcow2 -F qcow2 top.qcow2
step $QEMU_IMG info top.qcow2
step $QEMU_IO -f qcow2 -r -c 'read -P 0x33 5M 1M' -c 'read -P 0x22 2M 3M' -c 'read -P 0x11 0 2M' top.qcow2
step $QEMU_IMG convert -c -O qcow2 top.qcow2 comp.qcow2
step $QEMU_IMG compare top.qcow2 comp.qcow2
step $QEMU_IMG convert -O raw top.qcow2 flat.raw
step $QEMU_IMG compare -f raw -F qcow2 flat.raw comp.qcow2
step $QEMU_IMG snapshot -c snap1 comp.qcow2
step $QEMU_IO -f qcow2 -c 'write -P 0x44 0 64k' comp.qcow2
step $QEMU_IMG snapshot -a snap1 comp.qcow2
step $QEMU_IO -f qcow2 -r -c 'read -P 0x11 0 64k' comp.qcow2
step $QEMU_IMG snapshot -d snap1 comp.qcow2
step $QEMU_IMG check --output=json comp.qcow2
step $QEMU_IMG measure -O qcow2 top.qcow2
step $QEMU_IMG measure --output=json -O raw --size 1G
step $QEMU_IMG resize top.qcow2 +16M
step $QEMU_IMG check top.qcow2
step $QEMU_IMG info --output=json comp.qcow2
