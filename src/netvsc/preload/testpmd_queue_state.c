/*
 * testpmd_queue_state: an LD_PRELOAD companion for DPDK 22.11's dpdk-testpmd on netvsc ports.
 *
 * Layer 8 helper for netvsc.apps.dpdk_testpmd; compiled on demand against the installed DPDK
 * headers (pkg-config libdpdk), never shipped as a binary.
 *
 * Why it exists: DPDK 22.11's netvsc PMD never records its queues as started (the ethdev
 * queue_state of every queue stays STOPPED; DPDK fixed that in 23.11 with "net/netvsc: set queue
 * state after start/stop"), while testpmd 22.11.x, since a stable backport, asks each queue's
 * state before forwarding and skips streams whose queue reports STOPPED. Together, testpmd
 * forwards nothing on a netvsc port, on Azure as under the emulated host. The 22.11 PMD has no
 * per-queue start or stop at all: every configured queue runs while the port runs, so a set-up
 * queue of a netvsc port is reported STARTED here, which is what the 23.11 PMD reports. The PMD
 * itself, its data path and the bus are untouched.
 *
 * netvsc ports are recognised by their device name: a vmbus device is named by its instance
 * GUID, and net_netvsc is the only ethdev driver on the vmbus bus in 22.11.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <string.h>

#include <rte_ethdev.h>

#define EXPORT __attribute__((visibility("default")))

typedef int (*name_fn)(uint16_t, char *);

static int is_vmbus_port(uint16_t port_id) {
    /* Looked up at run time: the library may be loaded (LD_PRELOAD) into a non-DPDK process. */
    name_fn get_name = (name_fn)dlsym(RTLD_DEFAULT, "rte_eth_dev_get_name_by_port");
    char name[RTE_ETH_NAME_MAX_LEN];
    if (get_name == NULL || get_name(port_id, name) != 0 || strlen(name) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? name[i] != '-' : !isxdigit((unsigned char)name[i]))
            return 0;
    }
    return 1;
}

typedef int (*rx_info_fn)(uint16_t, uint16_t, struct rte_eth_rxq_info *);
typedef int (*tx_info_fn)(uint16_t, uint16_t, struct rte_eth_txq_info *);

EXPORT int rte_eth_rx_queue_info_get(uint16_t port_id, uint16_t queue_id, struct rte_eth_rxq_info *info) {
    rx_info_fn real = (rx_info_fn)dlsym(RTLD_NEXT, "rte_eth_rx_queue_info_get");
    if (real == NULL)
        return -ENOTSUP;
    int result = real(port_id, queue_id, info);
    if (result == 0 && info->queue_state == RTE_ETH_QUEUE_STATE_STOPPED && is_vmbus_port(port_id))
        info->queue_state = RTE_ETH_QUEUE_STATE_STARTED;
    return result;
}

EXPORT int rte_eth_tx_queue_info_get(uint16_t port_id, uint16_t queue_id, struct rte_eth_txq_info *info) {
    tx_info_fn real = (tx_info_fn)dlsym(RTLD_NEXT, "rte_eth_tx_queue_info_get");
    if (real == NULL)
        return -ENOTSUP;
    int result = real(port_id, queue_id, info);
    if (result == 0 && info->queue_state == RTE_ETH_QUEUE_STATE_STOPPED && is_vmbus_port(port_id))
        info->queue_state = RTE_ETH_QUEUE_STATE_STARTED;
    return result;
}
