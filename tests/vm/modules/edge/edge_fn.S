/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kdbt_edge_fn(x): a few basic blocks (a 16-round mixing loop) whose final
 * ret is the last byte of the page-sized, page-aligned .text.kdbt_edge, the
 * last executable section of the module, so the byte after it is the first
 * byte of the unmapped guard page after the module's text. A decoder that
 * reads past the ret (15-byte instruction fetch windows) faults.
 * EDGE_FN_SIZE must be the exact size of the code below; scripts/
 * test-modules.sh checks that the function ends at offset 4096.
 */
#include <linux/linkage.h>

#define EDGE_FN_SIZE 35

	.section .text.kdbt_edge, "ax", @progbits
	.balign 4096
	.org 4096 - EDGE_FN_SIZE, 0xcc
SYM_FUNC_START_NOALIGN(kdbt_edge_fn)
	movq	%rdi, %rax
	movl	$16, %ecx
1:	leaq	7(%rax,%rax,4), %rax
	rolq	$13, %rax
	xorq	%rdi, %rax
	testb	$1, %al
	jz	2f
	addq	%rcx, %rax
2:	decl	%ecx
	jnz	1b
	notq	%rax
	ret
SYM_FUNC_END(kdbt_edge_fn)
