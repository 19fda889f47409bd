/* ports/msg_int.h - internal: hooks of ports/msg.c for the rest of ports/. */
#ifndef FERRY_MSG_INT_H
#define FERRY_MSG_INT_H

/*
 * The control socket @sock (a port's end) is about to be sent to another
 * process, or may be: a port in a transfer list, an end handed to a
 * ferry_connect client. A spill segment sent to a port whose socket left the
 * process once is never read in place (ports/msg.c, spill_own): whoever
 * held the socket may have kept a dup and peeked the fds queued on it.
 */
void ferry__msg_sock_sent(int sock);

#endif
