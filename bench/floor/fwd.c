/* bench/floor/fwd.c — the least a userspace TUN<->UDP tunnel can do: the
 * floor under weft's latency in bench/latency-floor and bench/dataplane.
 *
 *   fwd IFNAME PEER_IP MODE
 *     poll     one thread sleeping in poll(2) on the TUN and the UDP socket
 *              (weftd's I/O thread has this shape)
 *     threads  one blocking thread per direction
 *     aead     poll, plus WireGuard's cipher on every packet: ChaCha20-Poly1305
 *              (OpenSSL) with a 16-byte header carrying a counter nonce and a
 *              16-byte tag, one fixed key.  No handshake, no replay window, no
 *              policy: only the per-packet cost no encrypting tunnel can skip.
 *
 * Creates TUN IFNAME (no packet info) and sends to PEER_IP:7777 from
 * 0.0.0.0:7777.  Reads up to 65535 bytes; no offloads.  Runs until killed.
 * Build: gcc -O2 -pthread -o fwd fwd.c -lcrypto
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define HDR 16
#define TAG 16
#define MAX 65535

static int tun, u;
static struct sockaddr_in peer;
static EVP_CIPHER_CTX *enc, *dec;
static uint64_t counter;

static void *up(void *x) {
    static char b[MAX];
    (void)x;
    for (;;) {
        int n = read(tun, b, sizeof b);
        if (n > 0) sendto(u, b, n, 0, (void *)&peer, sizeof peer);
    }
}

static void *down(void *x) {
    static char b[MAX];
    (void)x;
    for (;;) {
        int n = recv(u, b, sizeof b, 0);
        if (n > 0) write(tun, b, n);
    }
}

static void nonce_of(unsigned char nonce[12], const unsigned char *hdr) {
    memset(nonce, 0, 12);
    memcpy(nonce + 4, hdr + 8, 8);
}

/* Seals p[0..n) into w: header, ciphertext, tag.  Returns the datagram length. */
static int seal(const unsigned char *p, int n, unsigned char *w) {
    unsigned char nonce[12];
    int len;
    counter++;
    memset(w, 0, HDR);
    w[0] = 4;
    memcpy(w + 8, &counter, 8);
    nonce_of(nonce, w);
    if (!EVP_EncryptInit_ex(enc, 0, 0, 0, nonce) || !EVP_EncryptUpdate(enc, w + HDR, &len, p, n)
        || !EVP_EncryptFinal_ex(enc, w + HDR + len, &len)
        || !EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_AEAD_GET_TAG, TAG, w + HDR + n))
        return -1;
    return HDR + n + TAG;
}

/* Opens datagram w[0..n) into p.  Returns the packet length, -1 if forged. */
static int open_(unsigned char *w, int n, unsigned char *p) {
    unsigned char nonce[12];
    int len, m = n - HDR - TAG;
    if (m <= 0) return -1;
    nonce_of(nonce, w);
    if (!EVP_DecryptInit_ex(dec, 0, 0, 0, nonce) || !EVP_DecryptUpdate(dec, p, &len, w + HDR, m)
        || !EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_AEAD_SET_TAG, TAG, w + HDR + m)
        || EVP_DecryptFinal_ex(dec, p + len, &len) <= 0)
        return -1;
    return m;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: fwd IFNAME PEER_IP poll|threads|aead\n");
        return 2;
    }
    int aead = !strcmp(argv[3], "aead");
    tun = open("/dev/net/tun", O_RDWR);
    struct ifreq r = {0};
    r.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(r.ifr_name, argv[1], IFNAMSIZ - 1);
    if (tun < 0 || ioctl(tun, TUNSETIFF, &r) < 0) { perror("fwd: TUN"); return 1; }
    u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(7777)};
    if (u < 0 || bind(u, (void *)&a, sizeof a) < 0) { perror("fwd: UDP"); return 1; }
    peer = a;
    if (inet_pton(AF_INET, argv[2], &peer.sin_addr) != 1) { fprintf(stderr, "fwd: bad peer\n"); return 2; }
    if (!strcmp(argv[3], "threads")) {
        pthread_t t;
        pthread_create(&t, 0, up, 0);
        down(0);
    }
    if (aead) {
        static const unsigned char key[32] = "weft bench floor: one fixed key";
        enc = EVP_CIPHER_CTX_new();
        dec = EVP_CIPHER_CTX_new();
        if (!enc || !dec || !EVP_EncryptInit_ex(enc, EVP_chacha20_poly1305(), 0, key, 0)
            || !EVP_DecryptInit_ex(dec, EVP_chacha20_poly1305(), 0, key, 0)) {
            fprintf(stderr, "fwd: OpenSSL lacks ChaCha20-Poly1305\n");
            return 1;
        }
    }
    fcntl(tun, F_SETFL, O_NONBLOCK);
    fcntl(u, F_SETFL, O_NONBLOCK);
    static unsigned char p[MAX + HDR + TAG], w[MAX + HDR + TAG];
    for (;;) {
        struct pollfd f[2] = {{tun, POLLIN, 0}, {u, POLLIN, 0}};
        poll(f, 2, -1);
        if (f[0].revents) {
            int n = read(tun, p, MAX);
            if (n > 0 && aead) n = seal(p, n, w);
            if (n > 0) sendto(u, aead ? w : p, n, 0, (void *)&peer, sizeof peer);
        }
        if (f[1].revents) {
            int n = recv(u, w, sizeof w, 0);
            if (n > 0 && aead) n = open_(w, n, p);
            if (n > 0) write(tun, aead ? p : w, n);
        }
    }
}
