from crm_runtime.cli import main

main()
