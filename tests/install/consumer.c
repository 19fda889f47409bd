/* A program outside the tree, built against an installed ferry. */
#include <ferry.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
	ferry_port *a, *b;
	if (ferry_channel(&a, &b, NULL) != 0)
		return 1;
	if (ferry_port_post_bytes(a, "hello", 5, 0) != 0)
		return 2;
	ferry_msg *m;
	if (ferry_port_recv(b, &m, 0) != 0 || ferry_msg_len(m) != 5 ||
	    memcmp(ferry_msg_data(m), "hello", 5) != 0)
		return 3;
	ferry_msg_free(m);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	printf("ferry %s ok\n", ferry_version());
	return strcmp(ferry_version(), FERRY_VERSION_STRING) != 0;
}
