"""mmseqrec.llmrec"""
