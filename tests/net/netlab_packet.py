"""Ethernet + IPv4 + UDP frames, parsed and rebuilt by the lab's userspace switch.

The switch never patches a frame in place: it parses the datagram, decides where it goes
(and what the NAT rewrites), then builds a fresh frame with correct IPv4 and UDP checksums.
Rebuilding also covers checksum offload: a frame captured on a veth may carry only the
pseudo-header part of its UDP checksum (CHECKSUM_PARTIAL), which the receiving kernel would
reject once the frame has passed through a packet socket.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, replace

ETH_P_IP = 0x0800
IPPROTO_UDP = 17
ETH_HEADER = struct.Struct("!6s6sH")
IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
UDP_HEADER = struct.Struct("!HHHH")
DEFAULT_TTL = 64


@dataclass(frozen=True)
class Datagram:
    """One UDP datagram as the switch sees it (addresses as dotted quads)."""

    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes
    ttl: int = DEFAULT_TTL
    ident: int = 0

    def with_src(self, src: tuple[str, int]) -> "Datagram":
        return replace(self, src=src)

    def with_dst(self, dst: tuple[str, int]) -> "Datagram":
        return replace(self, dst=dst)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_checksum(src_ip: bytes, dst_ip: bytes, udp: bytes) -> int:
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, IPPROTO_UDP, len(udp))
    c = checksum(pseudo + udp)
    return c or 0xFFFF   # 0 means "no checksum" in UDP over IPv4, so a real zero is sent as all ones


def parse_frame(frame: bytes) -> Datagram | None:
    """The UDP datagram in an Ethernet frame, or None for anything else (ARP, IPv6, ICMP,
    TCP, fragments, truncated or malformed headers): the lab's daemons only speak UDP."""
    if len(frame) < ETH_HEADER.size + IP_HEADER.size:
        return None
    _dst, _src, ethertype = ETH_HEADER.unpack_from(frame)
    if ethertype != ETH_P_IP:
        return None
    ver_ihl, _tos, total_len, ident, flags_frag, ttl, proto, _csum, src, dst = \
        IP_HEADER.unpack_from(frame, ETH_HEADER.size)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < IP_HEADER.size or proto != IPPROTO_UDP:
        return None
    if flags_frag & 0x3FFF:              # more-fragments bit or a fragment offset
        return None
    ip_end = ETH_HEADER.size + total_len
    udp_at = ETH_HEADER.size + ihl
    if total_len < ihl + UDP_HEADER.size or ip_end > len(frame):
        return None
    sport, dport, udp_len, _ucsum = UDP_HEADER.unpack_from(frame, udp_at)
    if udp_len < UDP_HEADER.size or udp_at + udp_len > ip_end:
        return None
    payload = bytes(frame[udp_at + UDP_HEADER.size: udp_at + udp_len])
    return Datagram((socket.inet_ntoa(src), sport), (socket.inet_ntoa(dst), dport), payload, ttl, ident)


def build_frame(dg: Datagram, src_mac: bytes, dst_mac: bytes) -> bytes:
    """A fresh frame for `dg`: 20-byte IPv4 header (DF set), UDP header, both checksums."""
    src_ip, dst_ip = socket.inet_aton(dg.src[0]), socket.inet_aton(dg.dst[0])
    udp_len = UDP_HEADER.size + len(dg.payload)
    udp = UDP_HEADER.pack(dg.src[1], dg.dst[1], udp_len, 0) + dg.payload
    udp = udp[:6] + struct.pack("!H", udp_checksum(src_ip, dst_ip, udp)) + udp[8:]
    header = IP_HEADER.pack(0x45, 0, IP_HEADER.size + udp_len, dg.ident & 0xFFFF, 0x4000, dg.ttl,
                            IPPROTO_UDP, 0, src_ip, dst_ip)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return ETH_HEADER.pack(dst_mac, src_mac, ETH_P_IP) + header + udp


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))
