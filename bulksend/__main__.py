from bulksend.cli import main

main()
